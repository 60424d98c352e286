#!/bin/sh
# Redis as the compose file runs it: TLS only (port 6379), no default user, one ACL user per
# service with its password from the environment (REDIS_<SERVICE>_PASSWORD), AOF persistence.
# The users file is written where only this container reads it; no password is on a command line.
set -eu
umask 077
users=/tmp/users.acl
echo "user default off" > "$users"
for service in web inventory orders payments presentation operators; do
    variable="REDIS_$(echo "$service" | tr a-z A-Z)_PASSWORD"
    eval "password=\${$variable:-}"
    if [ -z "$password" ]; then
        echo "$variable is not set: every service needs its own Redis password." >&2
        exit 1
    fi
    # The bus's keys and channels; never the server's administration (CONFIG, FLUSHALL, ...).
    echo "user $service on >$password ~* &* +@all -@admin -@dangerous +info" >> "$users"
done
exec redis-server --aclfile "$users" --port 0 --tls-port 6379 \
    --tls-cert-file /tls/redis.pem --tls-key-file /tls/redis.key --tls-ca-cert-file /tls/ca.pem \
    --tls-auth-clients no --appendonly yes --appendfsync everysec --save ""
