#!/bin/sh
# Renders the declarative config with the API key from the environment, then starts Kong.
# Without KONG_API_KEY a random key is generated and printed once.
set -eu
if [ -z "${KONG_API_KEY:-}" ]; then
  KONG_API_KEY=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "kong: KONG_API_KEY was not set; generated one for this run: $KONG_API_KEY"
fi
sed "s|\${KONG_API_KEY}|$KONG_API_KEY|" /opt/kong/kong.yml.tmpl > /tmp/kong.yml
export KONG_DECLARATIVE_CONFIG=/tmp/kong.yml
exec /docker-entrypoint.sh kong docker-start
