# One image for the API and the workers of a deployed DIET service (see docker-compose.yml).
#   CPU image (API):    docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t diet-service:cpu .
#   GPU image (worker): docker build -t diet-service:gpu .   (PyPI's Linux torch wheels bundle CUDA)
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DIET_DATA_DIR=/data

RUN useradd --create-home --uid 1000 diet && mkdir /data && chown diet /data
WORKDIR /app

# torch first, in a layer of its own: it is most of the image and changes least.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.13,<3"

COPY pyproject.toml README.md alembic.ini ./
COPY diet_client ./diet_client
COPY diet_engine ./diet_engine
COPY service ./service
COPY worker ./worker
COPY migrations ./migrations
# Editable, so that alembic.ini and migrations/ stay beside the code that finds them.
RUN pip install -e '.[s3]'

USER diet
EXPOSE 8000
CMD ["uvicorn", "--factory", "service.app:main", "--http", "service.http_protocol:HttpProtocol", "--loop", "asyncio", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]
