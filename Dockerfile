# syntax=docker/dockerfile:1
# cownbd: NBD server for copy-on-write disk images.
#
#   docker build -t cownbd .
#   docker run --rm -p 127.0.0.1:10809:10809 -v /srv/images:/images cownbd --bind 0.0.0.0 /images/vm1.cow
#   docker stop -t 60 <container>    # SIGTERM drains requests and flushes overlays; give it time
#
# Stage 1 builds the TypeScript and the small Node-API addon (SEEK_DATA/SEEK_HOLE,
# fallocate); stage 2 is a slim Node 24 runtime with production dependencies only, run
# as the unprivileged "node" user (uid 1000): images on the volume must be readable by it
# (and overlays writable). test/packaging/dockerfile.test.ts keeps this file in step with
# the build (there is no Docker engine in CI): lint, COPY sources, entrypoint = "bin".

FROM node:24-bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: the `node` devDependency would download a second Node; the image has one.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY native ./native
COPY scripts ./scripts
COPY src ./src
# build/ exists even if the addon could not be built (the server then falls back).
RUN bash scripts/build-native.sh \
 && mkdir -p build \
 && npm run build \
 && npm prune --omit=dev --ignore-scripts --no-audit --no-fund

FROM node:24-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/build ./build
# Images live on a volume owned by the unprivileged runtime user (uid 1000, "node").
RUN mkdir -p /images && chown node:node /images
VOLUME ["/images"]
USER node
# 10809 is the IANA NBD port. Inside the container cownbd must bind 0.0.0.0 (CMD below);
# publish it on the host's loopback (-p 127.0.0.1:10809:10809): NBD has no authentication.
EXPOSE 10809
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "/app/dist/cli/main.js", "serve"]
CMD ["--bind", "0.0.0.0", "/images/disk.img"]
