#!/bin/sh
# One-shot: creates one RabbitMQ user per service (through the management API) with the
# passwords from the environment, and lets each use the default vhost.
set -eu
api=http://rabbitmq:15672/api
auth="$RABBITMQ_ADMIN_USER:$RABBITMQ_ADMIN_PASSWORD"
for pair in "orders-node:$ORDERS_AMQP_PASSWORD" "invoices-node:$INVOICES_AMQP_PASSWORD"; do
  user=${pair%%:*}; pass=${pair#*:}
  curl -fsS -u "$auth" -X PUT -H 'content-type: application/json' \
    -d "{\"password\":\"$pass\",\"tags\":\"\"}" "$api/users/$user"
  curl -fsS -u "$auth" -X PUT -H 'content-type: application/json' \
    -d '{"configure":".*","write":".*","read":".*"}' "$api/permissions/%2f/$user"
  echo "created $user"
done
