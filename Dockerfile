# Two images from one build: `--target gateway` and `--target agent`.
# (Not built in CI: the project's machines have no Docker engine.)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM gcr.io/distroless/cc-debian12:nonroot AS gateway
COPY --from=build /src/target/release/tunnelgate-gateway /usr/local/bin/tunnelgate-gateway
COPY --from=build /src/target/release/tgctl /usr/local/bin/tgctl
EXPOSE 8080 8443 9081 9090
ENTRYPOINT ["/usr/local/bin/tunnelgate-gateway"]

FROM gcr.io/distroless/cc-debian12:nonroot AS agent
COPY --from=build /src/target/release/tunnelgate-agent /usr/local/bin/tunnelgate-agent
ENTRYPOINT ["/usr/local/bin/tunnelgate-agent"]
