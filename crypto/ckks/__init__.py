"""The ``ckks`` protection mode's building blocks, in one import (DESIGN §4.3).

Parameters and the secret / public context types live in :mod:`crypto.ckks.context`; the
packed ciphertext layout, client encrypt/decrypt and the server's evaluation ops in
:mod:`crypto.ckks.ops`. Typical use::

    params = CkksParameters.default_for(packed_length=64, depth=1)
    secret = SecretContext.create(params)          # provisioning; clients get secret.serialize()
    public = secret.to_public()                    # the server gets public.serialize()
    enc_z = encrypt_matrix(secret, z)              # each client
    enc_q = encrypt_row_values(secret, q, cols=z.shape[1])
    enc_s = scale(public, add(public, group_z), 1 / tau)           # server, per Q_n
    enc_r = sq_norm_minus(public, add(public, group_z), add(public, group_q))
    r = -gamma / 2 * decrypt_row_values(secret, enc_r)             # client
    enc_w = encrypt_vector(secret, w)              # a flat vector, N/2 values per ciphertext
"""

from __future__ import annotations

from fedmuscle_secure.crypto.ckks.context import (
    MAX_COEFF_BITS,
    MIN_INTEGER_BITS,
    CkksParameters,
    PublicContext,
    SecretContext,
)
from fedmuscle_secure.crypto.ckks.ops import (
    EncryptedMatrix,
    EncryptedRowValues,
    RowLayout,
    add,
    decrypt_matrix,
    decrypt_row_values,
    decrypt_vector,
    encrypt_matrix,
    encrypt_row_values,
    encrypt_vector,
    fresh_error_bound,
    scale,
    sq_norm_minus,
    update_sum_error_bound,
    vector_layout,
)

__all__ = [
    "MAX_COEFF_BITS",
    "MIN_INTEGER_BITS",
    "CkksParameters",
    "EncryptedMatrix",
    "EncryptedRowValues",
    "PublicContext",
    "RowLayout",
    "SecretContext",
    "add",
    "decrypt_matrix",
    "decrypt_row_values",
    "decrypt_vector",
    "encrypt_matrix",
    "encrypt_row_values",
    "encrypt_vector",
    "fresh_error_bound",
    "scale",
    "sq_norm_minus",
    "update_sum_error_bound",
    "vector_layout",
]
