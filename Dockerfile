# syntax=docker/dockerfile:1
#
# outboxd container image.
#
#   docker build -t outboxd:$(node -p "require('./package.json').version") \
#     --build-arg VERSION=$(node -p "require('./package.json').version") \
#     --build-arg REVISION=$(git rev-parse HEAD) .
#   docker run --rm -v $PWD/config/stdout.yaml:/etc/outboxd/outboxd.yaml:ro -e PGPASSWORD -p 9187:9187 outboxd:…
#
# The build context is an allowlist (.dockerignore). test/integration/dockerfile.test.ts replays
# this file's COPY/WORKDIR/RUN steps without Docker and runs ENTRYPOINT+CMD against a real
# Postgres, so keep the steps to COPY, WORKDIR, ENV and `npm …` RUNs (plus the one apt step).

# Node.js 24 LTS, pinned by digest so a rebuild gets the same base: node:24-bookworm-slim
# (24.18.0). Bump the tag and the digest together.
ARG NODE_IMAGE=node:24-bookworm-slim@sha256:6f7b03f7c2c8e2e784dcf9295400527b9b1270fd37b7e9a7285cf83b6951452d

# ---- build: all dependencies, TypeScript -> dist/ ----
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies, dist/, tini, a numeric non-root user ----
FROM ${NODE_IMAGE} AS runtime
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/outboxd/outboxd
LABEL org.opencontainers.image.title="outboxd" \
      org.opencontainers.image.description="Transactional outbox relay: tails Postgres logical replication and publishes outbox rows to Kafka, RabbitMQ or stdout, at least once." \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

# tini is PID 1: it forwards SIGTERM to node (which drains and exits 0) and reaps zombies.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev --no-audit --no-fund
COPY --from=build /app/dist ./dist

# Files stay owned by root and read-only to the app; it writes nothing (readOnlyRootFilesystem works).
USER 10001:10001
EXPOSE 9187
# outboxd brings its own V8 flags and malloc setting however it is started (src/runtime.ts,
# docs/benchmarks.md#peak-rss-with-kafka); OUTBOXD_RUNTIME=inherit runs it with V8's defaults.
ENTRYPOINT ["/usr/bin/tini", "--", "node", "/app/dist/main.js"]
CMD ["run", "-c", "/etc/outboxd/outboxd.yaml"]
