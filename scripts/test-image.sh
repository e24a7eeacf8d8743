#!/usr/bin/env bash
# Builds the container image with buildah and smoke-tests it with podman (the image part of
# scripts/test-deploy.sh; it prints SKIPPED with the reason where the machine cannot build or
# run images). Arguments are passed on, e.g. --profile debug --no-build.
exec "$(dirname "$0")/test-deploy.sh" --image "$@"
