"""The AWS service and region of a standard endpoint host, for `aws-sigv4`'s `detect: true`."""

from __future__ import annotations

import re
from typing import Final

# -- service and region from the upstream host --------------------------------------------------

_AWS_DOMAINS: Final = (".amazonaws.com", ".amazonaws.com.cn")
_REGION: Final = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")
# Global endpoints without a region label, signed for us-east-1.
_GLOBAL_ENDPOINTS: Final = {
    "iam": "iam",
    "sts": "sts",
    "route53": "route53",
    "cloudfront": "cloudfront",
    "organizations": "organizations",
    "s3": "s3",
    "s3-external-1": "s3",
    "queue": "sqs",
    "sdb": "sdb",
}
_GLOBAL_REGION: Final = "us-east-1"
# Endpoint prefixes whose signing name differs.
_SIGNING_NAMES: Final = {
    "email": "ses",
    "bedrock-runtime": "bedrock",
    "bedrock-agent": "bedrock",
    "bedrock-agent-runtime": "bedrock",
    "aps-workspaces": "aps",
    "s3-accesspoint": "s3",
    "s3-control": "s3",
}
_NOT_A_SERVICE: Final = frozenset({"dualstack"})


def detect_service_region(host: str) -> tuple[str, str]:
    """(service, region) from a standard AWS endpoint host (`detect: true`).

    Understood: `<service>.<region>.amazonaws.com` (with any labels before it, e.g. an API id
    or an S3 bucket; `-fips` and `dualstack` variants), `<name>.<region>.<service>.amazonaws.com`
    (OpenSearch `es`, `aoss`), S3's legacy `s3-<region>` forms, the global endpoints (`iam`,
    `sts`, `route53`, `cloudfront`, `s3`, ... signed for us-east-1) and `.amazonaws.com.cn`.
    Raises ValueError for any other host (set `service` and `region` explicitly then).
    """
    name = host.strip().lower().rstrip(".")
    if name.startswith("["):
        raise ValueError(f"cannot derive an AWS service and region from {host!r}")
    name = name.rsplit(":", 1)[0] if ":" in name else name
    domain = next((d for d in _AWS_DOMAINS if name.endswith(d)), None)
    labels = name[: -len(domain)].split(".") if domain else []
    if not domain or not all(labels):
        raise ValueError(
            f"cannot derive an AWS service and region from {host!r}: not a standard "
            "*.amazonaws.com endpoint; set service and region explicitly"
        )
    found = _detect(labels)
    if found is None:
        raise ValueError(
            f"cannot derive an AWS service and region from {host!r}; "
            "set service and region explicitly"
        )
    return found


def _signing_name(label: str) -> str:
    label = label.removesuffix("-fips")
    return _SIGNING_NAMES.get(label, label)


def _detect(labels: list[str]) -> tuple[str, str] | None:
    last = labels[-1]
    # <service>.<region>  (also <bucket>.s3.<region>, s3.dualstack.<region>, <api>.execute-api...)
    if _REGION.match(last):
        service_labels = [label for label in labels[:-1] if label not in _NOT_A_SERVICE]
        if not service_labels:
            return None
        return _signing_name(service_labels[-1]), last
    # <name>.<region>.<service>  (OpenSearch: search-x.eu-west-1.es, coll.us-east-1.aoss)
    if len(labels) >= 2 and _REGION.match(labels[-2]):
        return _signing_name(last), labels[-2]
    # S3 legacy: s3-<region>, <bucket>.s3-<region>
    if last.startswith("s3-") and _REGION.match(last[3:]):
        return "s3", last[3:]
    if last in _GLOBAL_ENDPOINTS:
        return _GLOBAL_ENDPOINTS[last], _GLOBAL_REGION
    return None
