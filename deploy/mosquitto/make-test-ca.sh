#!/usr/bin/env bash
# Make a TEST certificate authority, a broker certificate and device client
# certificates with openssl. For trials and tests only: a real deployment
# keeps its CA key offline (or uses certificates from its own PKI).
#
#   make-test-ca.sh OUT_DIR [BROKER_HOST] [CLIENT_NAME...]
#
# Writes into OUT_DIR:
#   ca.crt ca.key                  the test CA (give ca.crt to devices: mqtt.tls.ca_file)
#   server.crt server.key          the broker's certificate, for BROKER_HOST (default localhost)
#                                  with subjectAltName DNS:BROKER_HOST, DNS:localhost, IP:127.0.0.1
#   <client>.crt <client>.key      one per CLIENT_NAME (CN = the name; use the device_id),
#                                  for mqtt.tls.cert_file / key_file when the broker requires client certificates
set -euo pipefail
out=${1:?usage: make-test-ca.sh OUT_DIR [BROKER_HOST] [CLIENT_NAME...]}
host=${2:-localhost}
shift $(( $# >= 2 ? 2 : $# ))
days=${DAYS:-825}
mkdir -p "$out"
cd "$out"
umask 077

openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
    -keyout ca.key -out ca.crt -subj "/CN=dawnchorus test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

sign() {  # $1 name, $2 CN, $3 extensions file
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
        -out "$1.crt" -extfile "$3" 2>/dev/null
    rm -f "$1.csr"
}

san="DNS:$host,DNS:localhost,IP:127.0.0.1"
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$san" > server.ext
sign server "$host" server.ext

printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > client.ext
for name in "$@"; do
    sign "$name" "$name" client.ext
done
rm -f server.ext client.ext ca.srl
# certificates are public; keys stay private (the broker reads server.key: chown it to mosquitto)
chmod 644 ./*.crt
echo "wrote $(ls | tr '\n' ' ')in $out"
