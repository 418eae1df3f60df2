# twistd -ny nextim.tac — runs the daemon with NEXTIM_CONFIG (default etc/nextim.toml).
import os

from twisted.application import service
from twisted.internet import reactor

from nextim_twisted import config
from nextim_twisted.service import NextimService

application = service.Application("nextim")
NextimService(config.load(os.environ.get("NEXTIM_CONFIG", "etc/nextim.toml")), reactor).setServiceParent(application)
