#!/usr/bin/env bash
# A private CA and one server certificate for the compose services (deploy/compose.tls.yaml),
# made with openssl into deploy/certs (or $1):
#   ca.pem, ca-key.pem          the CA: give ca.pem to clients, keep ca-key.pem safe
#   server.pem, server-key.pem  the services' certificate, valid for the compose service
#                               names, localhost and 127.0.0.1 (more: ZHIKU_TLS_NAMES="a b")
# Existing files are kept: delete them to make new ones.
set -euo pipefail

dir=${1:-"$(dirname "$0")/certs"}
days=${ZHIKU_TLS_DAYS:-825}
names="orchestrator embedder retriever generator tuner localhost ${ZHIKU_TLS_NAMES:-}"
mkdir -p "$dir"
cd "$dir"

if [[ ! -f ca.pem ]]; then
  openssl req -x509 -newkey rsa:3072 -sha256 -nodes -days "$days" \
    -keyout ca-key.pem -out ca.pem -subj "/CN=zhiku CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

if [[ ! -f server.pem ]]; then
  san="IP:127.0.0.1"
  for name in $names; do san="$san,DNS:$name"; done
  openssl req -newkey rsa:3072 -sha256 -nodes -keyout server-key.pem -out server.csr -subj "/CN=zhiku"
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -sha256 \
    -days "$days" -out server.pem -extfile <(printf '%s\n' \
      "subjectAltName=$san" "basicConstraints=CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth")
  rm -f server.csr ca.srl
fi
# The services read the key as a non-root user in the image.
chmod 644 server-key.pem
openssl verify -CAfile ca.pem server.pem
