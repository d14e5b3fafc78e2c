# Multi-stage build of a small static image. Images cannot be built on the development machines
# of this project (no container engine): see docs/install.md.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools
WORKDIR /src
# build.rs (the commit and target for --version) and bench/ (a target of the manifest) are needed
# to build at all; without .git the commit reads "unknown".
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY bench ./bench
RUN cargo build --locked --profile image --target x86_64-unknown-linux-musl --bin resilient-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/image/resilient-operator /resilient-operator
USER 65532:65532
ENTRYPOINT ["/resilient-operator"]
CMD ["run", "--metrics-address=0.0.0.0:8080", "--log-format=json", "--leader-elect"]
