# sip-policy-proxy container image.
#
#   docker build -t sip-policy-proxy .
#   docker run --rm -v "$PWD/docker/proxy.yaml:/etc/sip-policy-proxy/proxy.yaml:ro" \
#              -v "$PWD/docker/policy.yaml:/etc/sip-policy-proxy/policy.yaml:ro" \
#              -p 5060:5060/udp -p 5060:5060/tcp sip-policy-proxy
#
# The image holds the installed package only; the configuration (proxy.yaml and the policy file
# it names, relative to itself) is mounted at /etc/sip-policy-proxy. docker-compose.yml does that.
# SIGHUP (`docker kill -s HUP <container>`) reloads the policy; SIGTERM (`docker stop`) drains
# running transactions and exits 0.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Metadata first, then the package: a code change does not invalidate the base layers.
# python:3.11-slim has no C compiler: setup.py installs the pure-Python build (README,
# "Compiled build"); `sip-policy-proxy --version` says which one an image runs.
COPY pyproject.toml setup.py ./
COPY proxy/ ./proxy/
RUN pip install . \
 && rm -rf /src \
 && useradd --system --home-dir /var/lib/sip-policy-proxy --create-home sipproxy \
 && mkdir -p /etc/sip-policy-proxy \
 && sip-policy-proxy --version

# /var/lib/sip-policy-proxy: a place for `state: sqlite:/var/lib/sip-policy-proxy/state.db`
# (compose mounts a named volume there, so learned redirects survive a restart).
VOLUME ["/var/lib/sip-policy-proxy"]
WORKDIR /var/lib/sip-policy-proxy
USER sipproxy

EXPOSE 5060/udp 5060/tcp
STOPSIGNAL SIGTERM
ENTRYPOINT ["sip-policy-proxy"]
CMD ["run", "--config", "/etc/sip-policy-proxy/proxy.yaml"]
