# Writes OUT (a header defining MMKIT_GIT_DESCRIBE) from `git describe` in SRC,
# touching it only when the text changes so nothing rebuilds needlessly.
execute_process(COMMAND git describe --always --dirty --tags
                WORKING_DIRECTORY ${SRC}
                OUTPUT_VARIABLE describe ERROR_QUIET
                OUTPUT_STRIP_TRAILING_WHITESPACE
                RESULT_VARIABLE rc)
if(NOT rc STREQUAL "0" OR describe STREQUAL "")
  set(describe "unknown")
endif()
set(content "#pragma once\n#define MMKIT_GIT_DESCRIBE \"${describe}\"\n")
set(old "")
if(EXISTS ${OUT})
  file(READ ${OUT} old)
endif()
if(NOT old STREQUAL content)
  file(WRITE ${OUT} "${content}")
endif()
