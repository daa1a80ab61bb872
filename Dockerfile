# syntax=docker/dockerfile:1
# audit-shipper image: the package and its locked dependencies in a virtualenv on python:3.11-slim.
# The builder compiles the native hot path (shipper._native: C, linked to OpenSSL's libcrypto, which
# the slim image already has, and to libsnappy) into a wheel and installs it with constraints.txt
# (dependencies from binary wheels only); the final stage holds the venv and libsnappy's runtime
# package, nothing else: no compiler is shipped.
#
#   docker build -t audit-shipper:0.1.0 .
#
# The default user is 10001 (sidecar mode reads the application's own files). The DaemonSet runs it
# as root with only CAP_DAC_READ_SEARCH to read the kubelet's root-owned /var/log/pods (see the
# chart's values.yaml for why).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/audit-shipper
# Dependencies first, as their own layer: they change far less often than the code.
COPY pyproject.toml README.md constraints.txt ./
# constraints.txt comes from `pip freeze` of the dev venv: its editable line names a local path.
RUN grep -v '^-e ' constraints.txt > /tmp/constraints.txt \
 && python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt
RUN /opt/audit-shipper/bin/pip install --only-binary=:all: --constraint /tmp/constraints.txt \
        --requirement /tmp/requirements.txt
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev libsnappy-dev \
 && rm -rf /var/lib/apt/lists/*
COPY setup.py ./
COPY native ./native
COPY shipper ./shipper
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/audit-shipper/bin/pip install --no-deps /wheels/audit_shipper-*.whl \
 && /opt/audit-shipper/bin/pip check \
 && /opt/audit-shipper/bin/python -c 'import shipper.native as n; assert n.ENABLED, "native hot path missing"' \
 && /opt/audit-shipper/bin/python -m compileall -q /opt/audit-shipper/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="audit-shipper" \
      org.opencontainers.image.description="Kubernetes container logs to Kafka as a tamper-evident audit stream" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/audit-shipper/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends libsnappy1v5 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 shipper \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin shipper
COPY --from=builder /opt/audit-shipper /opt/audit-shipper
USER 10001:10001
EXPOSE 2020
ENTRYPOINT ["shipper"]
CMD ["run"]
