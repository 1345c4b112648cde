# Sluice worker image: `docker build -t sluice .`, or let docker-compose.yml build it.
# Runs `sluice worker` by default; every `sluice` subcommand works as the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Metadata first, then the packages (listed in pyproject's packages.find): no .venv,
# var/ or .git in the image. README.m[d] keeps the COPY valid if the file is absent.
COPY pyproject.toml README.m[d] ./
COPY sluice/ sluice/
COPY streams/ streams/
COPY topics/ topics/
COPY sinks/ sinks/
COPY avro_schemas/ avro_schemas/
RUN pip install . \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/sluice sluice

# Local state (Faust tables) lives in /var/lib/sluice: mount a volume there.
ENV SLUICE_DATA_DIR=/var/lib/sluice \
    SLUICE_WEB_HOST=0.0.0.0 \
    SLUICE_WEB_PORT=6066
USER sluice
WORKDIR /var/lib/sluice
EXPOSE 6066
# The worker drains, flushes every sink, commits and exits 0 on SIGTERM.
STOPSIGNAL SIGTERM
CMD ["sluice", "worker"]
