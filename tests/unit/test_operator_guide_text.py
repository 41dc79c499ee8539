"""The operator's guide's walkthrough names every step an operator needs: each protection
mode, the CSR path, the CKKS keys and the audit against the provisioned identities."""

import re

from helpers.operator_guide import walkthrough


def test_the_walkthrough_names_every_mode_and_the_csr_path():
    script = walkthrough()
    assert re.search(r"^MODE=plain\b", script, re.MULTILINE) and re.search(r"^PORT=\d+$", script, re.MULTILINE)
    for needed in ("provision csr", "provision identity", "provision sign", "provision init",
                   "provision ckks", "--trusted-keys", "audit"):
        assert needed in script, needed

