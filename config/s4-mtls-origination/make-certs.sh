#!/usr/bin/env bash
# Makes the S4 certificates exactly as the user's document does (openssl, CA example.com,
# server my-nginx.mesh-external.svc.cluster.local, client client.example.com), then lays
# them out the way the pods see them:
#   OUT/credentials/client-credential/{tls.crt,tls.key,ca.crt}   the Secret egret mounts
#   OUT/nginx/{tls.crt,tls.key,example.com.crt}                   nginx's server certs and CA
# These are lab certificates made on the spot; nothing here is committed.
set -euo pipefail
out="${1:?usage: make-certs.sh OUT_DIR}"
mkdir -p "$out/work" "$out/credentials/client-credential" "$out/nginx"
cd "$out/work"

openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' \
  -keyout example.com.key -out example.com.crt 2>/dev/null
openssl req -out my-nginx.mesh-external.svc.cluster.local.csr -newkey rsa:2048 -nodes \
  -keyout my-nginx.mesh-external.svc.cluster.local.key \
  -subj "/CN=my-nginx.mesh-external.svc.cluster.local/O=some organization" 2>/dev/null
openssl x509 -req -sha256 -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 0 \
  -in my-nginx.mesh-external.svc.cluster.local.csr -out my-nginx.mesh-external.svc.cluster.local.crt 2>/dev/null
openssl req -out client.example.com.csr -newkey rsa:2048 -nodes -keyout client.example.com.key \
  -subj "/CN=client.example.com/O=client organization" 2>/dev/null
openssl x509 -req -sha256 -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 1 \
  -in client.example.com.csr -out client.example.com.crt 2>/dev/null

# kubectl create secret generic client-credential --from-file=tls.key=... --from-file=tls.crt=... --from-file=ca.crt=...
cp client.example.com.crt "$out/credentials/client-credential/tls.crt"
cp client.example.com.key "$out/credentials/client-credential/tls.key"
cp example.com.crt "$out/credentials/client-credential/ca.crt"
# nginx-server-certs and nginx-ca-certs
cp my-nginx.mesh-external.svc.cluster.local.crt "$out/nginx/tls.crt"
cp my-nginx.mesh-external.svc.cluster.local.key "$out/nginx/tls.key"
cp example.com.crt "$out/nginx/example.com.crt"
echo "certificates in $out"
