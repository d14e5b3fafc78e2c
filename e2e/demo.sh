#!/usr/bin/env bash
# Placeholder until the demo issue lands: it will build the operator, start the local 3-zone
# cluster, install the operator, apply examples/shop.yaml, take zone-a down and show what survived.
echo "make demo is not implemented yet: it will run a local 3-zone cluster, the operator, the"
echo "example app and a zone outage. Today: make cluster, then cargo run -- run, then kubectl apply -f examples/."
exit 1
