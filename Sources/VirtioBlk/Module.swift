// module VirtioBlk
