# berth in a container: a static binary on a minimal, non-root base.
# Untested here (no container runtime could run on the machine this was
# written on); docs/operations.md#running-in-a-container says how to use it.
#
#   docker build -t berth .
#   docker run -d --name berth -v berth-data:/var/lib/berth \
#     -p 443:443 -p 8883:8883 -p 5671:5671 -p 127.0.0.1:8443:8443 \
#     berth serve --host iot.example.com --admin-addr 0.0.0.0:8443 --log-format json

FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# CGO off: SQLite is modernc.org/sqlite, pure Go, so the binary is static.
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags='-s -w' -o /out/berth ./cmd/berth \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/berth /usr/local/bin/berth
# The data directory (store, CA and its key, embedded NATS, client.json),
# owned by the image's non-root user (65532) so that a new volume is too.
COPY --from=build --chown=65532:65532 /out/data /var/lib/berth
ENV BERTH_DATA_DIR=/var/lib/berth
VOLUME ["/var/lib/berth"]
# Docker lets an unprivileged process bind ports below 1024 inside the
# container (net.ipv4.ip_unprivileged_port_start=0 since Docker 20.10).
EXPOSE 443 8883 5671 8443
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["serve", "--log-format", "json"]
