# syntax=docker/dockerfile:1
# One image per node: docker build --build-arg BIN=orders-node (or invoices-node) .
# Dependencies are compiled in their own layer from the manifests alone, so a source
# change rebuilds only the workspace crates. The runtime image is distroless, non-root.

FROM rust:1.95-slim-bookworm AS deps
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY contracts/Cargo.toml contracts/
COPY actors/Cargo.toml actors/
COPY orders-node/Cargo.toml orders-node/
COPY invoices-node/Cargo.toml invoices-node/
COPY ops/testkit/Cargo.toml ops/testkit/
# The operators' tool is a workspace member, so its manifest must be there; the image does
# not build it, and its placeholder source stays.
COPY ops/cli/Cargo.toml ops/cli/
RUN for d in contracts actors ops/testkit; do mkdir -p "$d/src" && : > "$d/src/lib.rs"; done \
 && for d in orders-node invoices-node; do mkdir -p "$d/src" && : > "$d/src/lib.rs" && echo 'fn main() {}' > "$d/src/main.rs"; done \
 && mkdir -p ops/cli/src && echo 'fn main() {}' > ops/cli/src/main.rs \
 && cargo build --release --locked -p orders-node -p invoices-node \
 && rm -rf contracts/src actors/src orders-node/src invoices-node/src ops/testkit/src

FROM deps AS build
COPY contracts contracts
COPY actors actors
COPY orders-node orders-node
COPY invoices-node invoices-node
COPY ops/testkit ops/testkit
# Make the real sources newer than the placeholders' build artefacts.
RUN find contracts actors orders-node invoices-node ops/testkit -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p orders-node -p invoices-node

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG BIN
COPY --from=build /src/target/release/${BIN} /app/service
USER nonroot
ENV HTTP_ADDR=0.0.0.0:8080 LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["/app/service", "healthcheck"]
ENTRYPOINT ["/app/service"]
