"""What crosses between the pool and its workers, and how.

* :mod:`.messages` -- message codes, task and reply encoding, exceptions that
  always decode;
* :mod:`.framing` -- the length-prefixed frames on the pipes;
* :mod:`.channels` -- reading and writing pipes without blocking the supervisor;
* :mod:`.buffers` -- large arguments outside the pipes;
* :mod:`.slots` -- each worker's slot in shared memory (which item runs).
"""
