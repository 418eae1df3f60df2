# twistd -ny nextim.tac — runs the daemon with NEXTIM_CONFIG (default etc/nextim.toml).
import os
import sys

from twisted.application import service
from twisted.internet import reactor

from nextim_twisted import config
from nextim_twisted.service import NextimService

try:
    settings = config.load(os.environ.get("NEXTIM_CONFIG", "etc/nextim.toml"))
except config.ConfigError as e:  # one line and exit 2, like twistd nextim and nextimctl
    sys.stderr.write(f"nextim: configuration error: {e}\n")
    raise SystemExit(2)
application = service.Application("nextim")
NextimService(settings, reactor).setServiceParent(application)
