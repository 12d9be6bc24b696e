# OutboxRelay: multi-stage build. The runtime image holds the binary, the Swift
# runtime libraries it links (libpq, librdkafka, libnats, librabbitmq, libcurl, libmosquitto, libqpid-proton), and the sql/ setup files.
#
#   docker build -t outbox-relay .
#   docker run --rm -e OUTBOX_RELAY_SOURCE="host=db user=outbox_relay dbname=app" \
#     -e OUTBOX_RELAY_SINK=kafka -e OUTBOX_RELAY_KAFKA_BROKERS=kafka:9092 outbox-relay
# The toolchain the project is built and tested with here (6.3.1); the
# dependencies need 6.2 or later.
ARG SWIFT_IMAGE=swift:6.3-bookworm
FROM ${SWIFT_IMAGE} AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libpq-dev librdkafka-dev libnats-dev librabbitmq-dev libcurl4-openssl-dev libmosquitto-dev libqpid-proton11-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN swift build -c release --product outbox-relay --static-swift-stdlib \
 && install -D .build/release/outbox-relay /out/usr/bin/outbox-relay
COPY sql /out/usr/share/outbox-relay/sql

FROM debian:bookworm-slim
# libpq5, librdkafka1, libnats3.4, librabbitmq4, libcurl4, libmosquitto1 and libqpid-proton11 from Debian; the Swift standard library is linked statically.
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libpq5 librdkafka1 libnats3.4 librabbitmq4 libcurl4 libmosquitto1 libqpid-proton11 ca-certificates tzdata && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home outbox-relay
COPY --from=build /out/ /
USER 10001
ENV OUTBOX_RELAY_HTTP_ADDRESS=0.0.0.0:9187 OUTBOX_RELAY_LOG_FORMAT=json
EXPOSE 9187
ENTRYPOINT ["/usr/bin/outbox-relay"]
CMD ["run"]
