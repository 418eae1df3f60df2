"""Packaging for nextim-twisted (docs/architecture.md#where-each-concern-lives)."""
from setuptools import find_packages, setup

setup(
    name="nextim-twisted",
    version="0.1.0",
    license="MIT",
    description="Standalone web instant-messaging daemon speaking the NextIM protocol, on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*"]) + ["twisted.plugins"],
    package_data={
        "nextim_twisted.web": ["static/*", "static/**/*", "*.json"],
    },
    include_package_data=True,
    install_requires=[
        # twisted.web.websocket (Twisted's own, on wsproto) serves GET /ws
        # (docs/design.md#d21-websocket); its gaps are closed in web/websocket.py
        "Twisted[websocket]>=25.5",
        "klein>=24.8",
        "PyJWT>=2.8",
        "argon2-cffi>=23.1",
        "prometheus-client>=0.17",
        # the host site as the source of truth: signed requests to the site's API and the
        # webhook deliveries (docs/integration.md); imported whatever the configuration
        "treq>=24.9",
    ],
    extras_require={
        "postgres": ["psycopg[binary]>=3.1"],
        # several nodes over Redis (docs/scaling.md); its gaps are closed in hub/redisclient.py
        "cluster": ["txredisapi>=1.4.10"],
        "test": [
            "pytest>=8,<9.1",  # schemathesis 4.32 breaks on pytest 9.2 (Function._nodeid)
            "pytest-twisted>=1.14",
            "treq>=24.9",
            "hypothesis>=6.100",
            "playwright>=1.45",
            "slixmpp>=1.8",  # the XMPP user in tests/test_xmpp.py (docs/xmpp.md)
            # hostile-input checks: response schemas (tests/test_openapi.py), the document itself, and
            # generated requests against a real daemon (tests/test_schemathesis.py)
            "jsonschema>=4.20",
            "openapi-spec-validator>=0.7",
            "schemathesis>=4.0,<5",
            # .ci/run lints and type-checks before the tests (settings in pyproject.toml)
            "ruff>=0.6,<1",
            "mypy>=1.10,<3",
        ],
    },
    entry_points={"console_scripts": ["nextimctl = nextim_twisted.ctl:main"]},
)
