from setuptools import find_packages, setup

with open("README.rst", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="oidcproxy",
    version="0.1.0.dev0",
    description="OpenID Connect authenticating reverse proxy built on Twisted",
    long_description=long_description,
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.9",
    # Every layer of the package (oidcproxy.*), and the twistd plugin.
    packages=[*find_packages(include=["oidcproxy", "oidcproxy.*"]), "twisted.plugins"],
    # The templates, stylesheet and script of the pages the proxy shows.
    package_data={"twisted": ["plugins/oidcproxy_plugin.py"],
                  "oidcproxy.web.pages": ["templates/*.xhtml", "templates/*.css",
                                          "templates/*.js"]},
    install_requires=[
        # 24.7 fixed the HTTP request-smuggling and pipelining CVEs
        # (CVE-2024-41671, CVE-2024-41810).
        "Twisted[tls]>=24.7.0",
        "treq>=23.11.0",
        "pyjwt[crypto]>=2.8.0",
        # 1.6.0: the connection pool slots (startConnecting) the Redis store builds on.
        "txredisapi>=1.6.0",
        # Prometheus metrics: the exposition format and a Twisted
        # MetricsResource for the [metrics] listener. 0.17 is the oldest
        # tested (and typed).
        "prometheus-client>=0.17.0",
        "service-identity>=21.1.0",
        "pyopenssl>=23.2.0",
        "cryptography>=41.0.0",
        "attrs>=22.2.0",
        'tomli>=1.1.0; python_version < "3.11"',
        # oidcproxy-import-traefik reads Kubernetes YAML (safe_load_all only).
        "PyYAML>=6.0",
        # oidcproxy-import-traefik writes its TOML with tomli-w: a correct,
        # maintained TOML writer instead of our own escaping rules. 1.0 has
        # the API used (dumps); 1.2.0 installs on PyPy 3.9 (pure Python).
        "tomli-w>=1.0.0",
    ],
    extras_require={
        # HTTP/2 to clients on TLS listeners (ALPN h2): Twisted's own server,
        # on the pure-Python h2 and priority packages (they install on PyPy 3.9 too).
        # Named with Twisted's own bounds for its http2 extra: "Twisted[http2]"
        # sends pip's resolver too deep in a fresh PyPy 3.9 venv.
        "http2": ["h2>=3.2,<5.0", "priority>=1.1.0,<2.0"],
    },
    entry_points={
        "console_scripts": ["oidcproxy-import-traefik = oidcproxy.tools.traefik:main"],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: Implementation :: CPython",
        "Programming Language :: Python :: Implementation :: PyPy",
        "Topic :: Internet :: WWW/HTTP :: HTTP Servers",
        "Topic :: System :: Systems Administration :: Authentication/Directory",
    ],
)
