# The Tripwire server image: `tripwire db upgrade`, `tripwire scheduler`, `tripwire dashboard`.
#
# Trainers do not use this image: they `pip install tripwire` next to their own torch and point
# TRIPWIRE_DB_URL at the stack's PostgreSQL. The server commands never import torch, so it is
# left out (build with --build-arg WITH_TORCH=1 to get the CPU build, e.g. for `tripwire demo`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
ARG WITH_TORCH=0

# Dependencies first (a layer that survives code changes), computed from pyproject.toml.
COPY pyproject.toml README.md ./
COPY scripts/server_requirements.py scripts/
RUN if [ "$WITH_TORCH" = "1" ]; then \
        pip install --index-url https://download.pytorch.org/whl/cpu torch && \
        python scripts/server_requirements.py --with-torch > /tmp/requirements.txt; \
    else \
        python scripts/server_requirements.py > /tmp/requirements.txt; \
    fi && \
    pip install -r /tmp/requirements.txt

COPY tripwire ./tripwire
COPY collector ./collector
COPY storage ./storage
COPY alerts ./alerts
COPY dashboard ./dashboard
# --no-deps: torch (a core dependency for trainers) stays out of the server image.
RUN pip install --no-deps . && \
    useradd --system --uid 10001 --create-home tripwire  # Streamlit writes ~/.streamlit

USER tripwire
EXPOSE 8501
CMD ["tripwire", "--help"]
