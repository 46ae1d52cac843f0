# sluice's container image: a static binary on distroless, running as nobody.
#   docker build -t ghcr.io/sluice-dev/sluice:0.1.0 .
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sluice \
 && cp target/release/sluice /sluice

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /sluice /sluice
USER 65532:65532
EXPOSE 9977 9091
ENTRYPOINT ["/sluice"]
