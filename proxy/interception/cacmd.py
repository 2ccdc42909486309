"""`signing-proxy ca create`: a development CA for HTTPS interception, and how to trust it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2


def add_ca_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = commands.add_parser("ca", help="the CA of HTTPS interception (intercept: true routes)")
    actions = ca.add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="create a development CA (EC P-256): DIR/ca.crt and DIR/ca.key (mode 0600)",
    )
    create.add_argument("--out", required=True, metavar="DIR", help="directory to write to")
    create.add_argument(
        "--force", action="store_true", help="replace ca.crt and ca.key if they exist"
    )
    create.add_argument(
        "--permit",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="name constraint: the CA may sign only for this domain and its subdomains (or "
        "this IP address/network); repeatable. Without it the CA can sign for any name.",
    )


def ca_command(args: argparse.Namespace) -> int:
    from proxy.interception.ca import create_ca  # cryptography: for this command only

    assert args.ca_command == "create"
    out = Path(args.out)
    try:
        created = create_ca(out, force=args.force, permit=args.permit)
    except FileExistsError as err:
        print(f"signing-proxy ca create: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as err:
        print(f"signing-proxy ca create: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        print(f"signing-proxy ca create: cannot write to {out}: {err.strerror}", file=sys.stderr)
        return 1
    cert, key = created.cert_path, created.key_path
    scope = ", ".join(args.permit) if args.permit else "ANY name (add --permit DOMAIN to limit it)"
    # The example host must be one the CA may sign for, or `check` refuses the route.
    host = f"api.{args.permit[0].lstrip('.')}" if args.permit else "api.vendor.example"
    print(
        f"""\
Created a development CA, valid until {created.not_after:%Y-%m-%d}, signing for: {scope}
  certificate: {cert}   (public: give it to the apps that go through the proxy)
  private key: {key}   (mode 0600: the proxy alone may read it)

Use it in the proxy's config, and opt routes in:
  interception:
    ca_cert: {{file: {cert}}}
    ca_key: {{file: {key}}}
  routes:
    - name: vendor
      match: {{host: {host}}}
      intercept: true
      ...

Make the apps trust it (for the proxy's tunnels only; never install the key anywhere):
  curl:          curl --proxy http://127.0.0.1:8080 --cacert {cert} https://{host}/
  Python:        HTTPS_PROXY=http://127.0.0.1:8080 and REQUESTS_CA_BUNDLE (requests) or
                 SSL_CERT_FILE (urllib, httpx, aiohttp) = a bundle that holds {cert}
                 (either replaces the default store)
  Node:          NODE_EXTRA_CA_CERTS={cert} HTTPS_PROXY=http://127.0.0.1:8080 and
                 NODE_USE_ENV_PROXY=1 (Node >= 24) or undici's EnvHttpProxyAgent
  Java:          keytool -importcert -noprompt -alias signing-proxy -file {cert} \\
                   -keystore proxy-trust.p12 -storepass changeit
                 java -Djavax.net.ssl.trustStore=proxy-trust.p12 \\
                   -Djavax.net.ssl.trustStorePassword=changeit \\
                   -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=8080 ...
  Debian/Ubuntu: cp {cert} /usr/local/share/ca-certificates/signing-proxy.crt && \\
                 update-ca-certificates
"""
    )
    return 0
