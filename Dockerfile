# The Fleetgate image the Helm charts run (helm/gateway, and helm/vllm-deployment's registration Jobs):
# `opsctl` on PATH, uid 10001, writes only to /tmp and /var/lib/fleetgate (mount an emptyDir or a volume there).
#   docker build -t ghcr.io/fleetgate/fleetgate:$(python -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])') .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY analytics_lake analytics_lake
COPY opsctl opsctl
COPY tui tui
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 10001 --home-dir /var/lib/fleetgate --create-home --shell /usr/sbin/nologin fleetgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /var/lib/fleetgate
ENV FLEETGATE_STATE_DIR=/var/lib/fleetgate PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
EXPOSE 8080
ENTRYPOINT ["opsctl"]
CMD ["gateway", "serve", "--host", "0.0.0.0", "--port", "8080"]
