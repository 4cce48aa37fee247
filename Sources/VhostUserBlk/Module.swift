// module VhostUserBlk
