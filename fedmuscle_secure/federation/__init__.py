"""The only code that turns a config into objects (DESIGN §9): the split
(:mod:`.split`), the shared setup with its one protection decision (:mod:`.setup`), the
DP calibration (:mod:`.privacy`), the secagg and CKKS parameters (:mod:`.secagg`,
:mod:`.ckks`), the clients and the server (:mod:`.clients`, :mod:`.server`) and the config
checks that need a layer (:mod:`.checks`). The simulator, both gRPC processes and
``provision ckks`` build through it."""
