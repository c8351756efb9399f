# syntax=docker/dockerfile:1
# cownbd: NBD server for copy-on-write disk images.
#
#   docker build -t cownbd .
#   docker run --rm -p 10809:10809 -v /srv/images:/images cownbd --bind 0.0.0.0 /images/vm1.cow
#
# Stage 1 builds the TypeScript and the small Node-API addon (SEEK_DATA/SEEK_HOLE,
# fallocate); stage 2 is a slim Node 24 runtime with production dependencies only.

FROM node:24-bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY native ./native
COPY scripts ./scripts
COPY src ./src
RUN bash scripts/build-native.sh \
 && npm run build \
 && npm prune --omit=dev --ignore-scripts

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
EXPOSE 10809
ENTRYPOINT ["node", "/app/dist/cli/main.js", "serve"]
CMD ["--bind", "0.0.0.0", "/images/disk.img"]
