"""`scheme: hmac`: any HMAC API declared in the config (README: "The hmac scheme").

template.py parses the template syntax, functions.py holds the closed vocabularies (filters,
digests, encodings, `now` formats, `random` kinds), params.py reads and edits query strings and
forms, compiler.py turns a template into a function of one request, plan.py compiles a whole
config, signer.py runs the plan, explain.py shows it (`sign --explain`).
"""

from proxy.signers.hmac.config import HmacConfig
from proxy.signers.hmac.explain import Explanation
from proxy.signers.hmac.signer import HmacSigner

__all__ = ["Explanation", "HmacConfig", "HmacSigner"]
