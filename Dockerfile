# Sluice worker image: `docker build -t sluice .`, or let docker-compose.yml build it.
# Runs `sluice worker` by default; every `sluice` subcommand works as the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The locked worker dependencies first (a layer that changes only with the lock), then the
# product packages (pyproject's packages.find): no dev/, bench/, tests/, .venv, var/ or
# .git in the image. README.m[d] keeps the COPY valid if the file is absent.
COPY requirements/worker.txt requirements/worker.txt
RUN pip install --require-hashes -r requirements/worker.txt
COPY pyproject.toml README.m[d] ./
COPY sluice/ sluice/
COPY cli/ cli/
COPY streams/ streams/
COPY topics/ topics/
COPY sinks/ sinks/
COPY avro_schemas/ avro_schemas/
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/sluice sluice

# Local state lives in /var/lib/sluice: mount a volume there. The web endpoint listens on
# every address so Prometheus can scrape /metrics; the query and rows endpoints need
# SLUICE_API_TOKEN (the production profile refuses to start without it on 0.0.0.0).
ENV SLUICE_DATA_DIR=/var/lib/sluice \
    SLUICE_WEB_HOST=0.0.0.0 \
    SLUICE_WEB_PORT=6066
USER sluice
WORKDIR /var/lib/sluice
EXPOSE 6066
# The worker drains, flushes every sink, commits and exits 0 on SIGTERM.
STOPSIGNAL SIGTERM
CMD ["sluice", "worker"]
