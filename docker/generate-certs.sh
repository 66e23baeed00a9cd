#!/usr/bin/env bash
# Self-signed CA and a SuperLink server certificate for docker/compose.tls.yaml (and for
# flower-superlink --ssl-* on any host). Usage: docker/generate-certs.sh [EXTRA_HOSTNAME ...]
# Writes docker/certs/{ca.crt,ca.key,server.pem,server.key}; valid 365 days. The SANs cover
# the compose service name, localhost and 127.0.0.1, plus any hostnames given.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p certs
cd certs

sans="DNS:superlink,DNS:localhost,IP:127.0.0.1"
for host in "$@"; do sans="$sans,DNS:$host"; done

openssl req -x509 -newkey rsa:4096 -sha256 -days 365 -nodes \
  -keyout ca.key -out ca.crt -subj "/CN=fedmem-ca" 2>/dev/null
openssl req -newkey rsa:4096 -sha256 -nodes \
  -keyout server.key -out server.csr -subj "/CN=superlink" 2>/dev/null
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
  -out server.pem -days 365 -sha256 \
  -extfile <(printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\n" "$sans") 2>/dev/null
rm -f server.csr ca.srl
chmod 600 ca.key server.key
echo "wrote $(pwd)/{ca.crt,server.pem,server.key} (SANs: $sans)"
