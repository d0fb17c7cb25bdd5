import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "greenq" / "__init__.py").read_text()).group(1)

setup(
    name="greenq",
    version=VERSION,
    description="Background jobs for Python on gevent: thousands of IO-bound jobs in flight on a few cores.",
    long_description=(HERE / "README.rst").read_text(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.11",
    packages=find_packages(include=["greenq", "greenq.*"]),
    include_package_data=True,
    install_requires=[
        "gevent>=23.9",
        "pika>=1.3",
        "redis>=5.0",
        "click>=8.1",
    ],
    extras_require={
        "prometheus": ["prometheus_client>=0.17"],
        "cron": ["croniter>=2.0"],
        # redis-py reads replies with hiredis's C parser when it is installed
        "hiredis": ["redis[hiredis]"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.2",
            "hypothesis>=6.100",
            "requests>=2.31",
            "prometheus_client>=0.17",
            "croniter>=2.0",
            "redis[hiredis]",
        ],
    },
    entry_points={
        "console_scripts": [
            "greenq = greenq.cli.main:main",
            "greenq-gevent = greenq.cli.gevent_main:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Framework :: gevent",
    ],
)
