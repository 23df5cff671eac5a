"""nginx as an mTLS reverse proxy, for context beside the reference proxy (when nginx is installed).

The same TLS as ztb and the reference: TLS 1.3 only, a client certificate required and checked
against the deployment's client CA on the way in; on the way out, the broker's egress certificate,
the upstream's CA verified with its name (nginx 1.22 checks DNS names only, so the upstream's
registered name, which its certificate carries, rather than its IP address), and a keep-alive pool. It strips the upstream's name
from the path like the reference does. One process (`master_process off`, one worker), so its CPU
is one /proc entry: `python -m bench.nginx_proxy DEPLOYMENT PORT` runs it in the foreground.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ztb.config import load_broker_config, load_registry

UPSTREAM = "orders.api.internal"


def nginx_config(root: Path, port: int, prefix: Path) -> str:
    config = load_broker_config(root)
    upstream = load_registry(root).upstreams[UPSTREAM]
    temp = "\n".join(
        f"  {name}_temp_path {prefix / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# written by bench/nginx_proxy.py
worker_processes 1;
master_process off;
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
{temp}
  upstream orders {{ server {upstream.authority}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_protocols TLSv1.3;
    ssl_certificate {config.path(config.tls.cert)};
    ssl_certificate_key {config.path(config.tls.key)};
    ssl_client_certificate {config.path(config.tls.client_ca)};
    ssl_verify_client on;
    keepalive_requests 1000000;
    client_max_body_size 64k;
    location / {{
      rewrite ^/[^/]+(/.*)$ $1 break;
      proxy_pass https://orders;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_certificate {config.path(config.egress.cert)};
      proxy_ssl_certificate_key {config.path(config.egress.key)};
      proxy_ssl_trusted_certificate {upstream.ca};
      proxy_ssl_verify on;
      proxy_ssl_name {UPSTREAM};
      proxy_ssl_server_name on;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_session_reuse on;
    }}
  }}
}}
"""


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.exit("usage: python -m bench.nginx_proxy DEPLOYMENT PORT")
    nginx = shutil.which("nginx")
    if nginx is None:
        sys.exit("nginx is not installed")
    root = Path(argv[0]).resolve()
    prefix = root.parent / f"nginx-{argv[1]}"  # beside the deployment: removed with it
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(root, int(argv[1]), prefix))
    os.execv(
        nginx, [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    )  # the same pid: its CPU is nginx's


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
