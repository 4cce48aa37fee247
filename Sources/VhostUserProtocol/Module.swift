// module VhostUserProtocol
