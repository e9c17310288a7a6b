# The Ferry controller image (docker-compose.yml runs it as `worker --controller`).
# Build stage: full node image (compilers for native modules if no prebuilt binary fits).
FROM node:20-bookworm AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
# `npm ci` runs the `prepare` script, which compiles src/ to dist/.
RUN npm ci && npm prune --omit=dev

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
RUN mkdir -p /var/lib/ferry && chown node:node /var/lib/ferry
USER node
VOLUME ["/var/lib/ferry"]
CMD ["node", "dist/cli/ferry.js", "worker", "--controller"]
