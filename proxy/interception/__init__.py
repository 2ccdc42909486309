"""HTTPS interception for `CONNECT host:443` to routes with `intercept: true`.

- `ca`: the operator's CA (loaded and checked, or created by `signing-proxy ca create`);
- `leaves`: a short-lived leaf certificate and one TLS server context per intercepted host;
- `config`: the `interception:` and `tunnels:` config sections;
- `cacmd`: the `ca` command.
"""
