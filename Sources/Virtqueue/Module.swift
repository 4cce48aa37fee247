// module Virtqueue
