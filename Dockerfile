# One image for every process: intake (serve), worker and beat differ only by command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY templates ./templates
COPY migrations ./migrations
COPY config ./config
RUN pip install --no-cache-dir . && useradd --system dunning
USER dunning
ENV DUNNING_CONFIG=/app/config/dunning.toml
CMD ["dunning", "--help"]
