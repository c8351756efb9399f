# syntax=docker/dockerfile:1
# cownbd: NBD server for copy-on-write disk images.
#
#   docker build -t cownbd .
#   docker run --rm -p 127.0.0.1:10809:10809 -v /srv/images:/srv/images cownbd serve /srv/images/vm1.cow
#   docker run --rm -v /srv/images:/srv/images cownbd info /srv/images/vm1.cow
#   docker stop -t 60 <container>    # SIGTERM drains requests and flushes overlays; give it time
#
# The entrypoint is the `cownbd` command (default command: `serve`), so every subcommand
# works: serve, info, check, map, commit, convert, rebase, create.
#
# Mount images at the SAME path as on the host (-v /srv/images:/srv/images): overlays record
# their backing file by absolute path, and that path must resolve inside the container too
# (or pass --backing-path-map HOSTPATH=CONTAINERPATH to serve).
#
# Stage 1 builds the TypeScript and the small Node-API addon (SEEK_DATA/SEEK_HOLE,
# fallocate); stage 2 is the same pinned Node 24 slim base with production dependencies
# only, without npm/npx/yarn, run as the unprivileged "node" user (uid 1000): images on
# the volume must be readable by it (and overlays writable). test/packaging/dockerfile.test.ts
# keeps this file in step with the build (there is no Docker engine in CI).

FROM node:24.21.0-bookworm-slim AS build
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

FROM node:24.21.0-bookworm-slim AS runtime
ENV NODE_ENV=production
# Inside the container the loopback is unreachable from outside: listen on every interface
# by default and let `docker run -p 127.0.0.1:10809:10809` decide who may connect.
ENV COWNBD_BIND=0.0.0.0
# No package manager at run time: less to patch, nothing to fetch code with.
RUN rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack \
      /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack /opt/yarn-* \
      /usr/local/bin/yarn /usr/local/bin/yarnpkg
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/build ./build
RUN chmod 0755 /app/dist/cli/main.js \
 && ln -s /app/dist/cli/main.js /usr/local/bin/cownbd \
 && mkdir -p /srv/images && chown node:node /srv/images
VOLUME ["/srv/images"]
USER node
# 10809 is the IANA NBD port. Publish it on the host's loopback (-p 127.0.0.1:10809:10809):
# a bare -p 10809:10809 publishes on every host interface, and NBD has no authentication
# unless --tls is configured.
EXPOSE 10809
STOPSIGNAL SIGTERM
# Healthy = an NBD greeting arrives on the default port (set COWNBD_HEALTHCHECK=HOST:PORT
# or /path.sock when serving elsewhere).
HEALTHCHECK --interval=30s --timeout=10s --retries=3 \
  CMD ["node", "/app/dist/cli/healthcheck.js"]
ENTRYPOINT ["cownbd"]
CMD ["serve", "/srv/images/disk.img"]
