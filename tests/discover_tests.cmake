# Registers kolos_tests with CTest after each build (run as a POST_BUILD step: cmake -P).
#
# Every test process loads LibTorch, which costs 0.7–0.8 s here; one process per test spent about 250 s of CTest's
# 20-minute budget on start-up alone. So each suite is one CTest test (`--gtest_filter=Suite.*`, TIMEOUT for the
# whole suite), except the suites named in PER_TEST_SUITES — those whose tests start multi-rank runs, 5–40 s each —
# which keep one CTest test per test, each with its own TIMEOUT, as DESIGN asks of multi-process tests. The tests
# come from the binary itself (`--gtest_list_tests`), so none can be left out.
#
# Input: TEST_BINARY, OUTPUT (the CTest file to write), PER_TEST_SUITES (comma-separated suite names; a
# parameterised suite "Prefix/Suite" is named by "Suite"), WORKING_DIRECTORY, TIMEOUT, ENVIRONMENT (one VAR=value).

cmake_minimum_required(VERSION 3.20)

execute_process(COMMAND "${TEST_BINARY}" --gtest_list_tests
                OUTPUT_VARIABLE listing RESULT_VARIABLE listed ERROR_VARIABLE listing_error)
if(NOT listed EQUAL 0)
  message(FATAL_ERROR "${TEST_BINARY} --gtest_list_tests failed (${listed}): ${listing_error}")
endif()

string(REPLACE "," ";" per_test_suites "${PER_TEST_SUITES}")

string(REPLACE ";" "\\;" listing "${listing}")
string(REPLACE "\n" ";" lines "${listing}")
set(script "# Written by tests/discover_tests.cmake from ${TEST_BINARY} --gtest_list_tests; do not edit.\n")
set(count 0)
macro(register name filter)
  string(APPEND script
         "add_test([==[${name}]==] [==[${TEST_BINARY}]==] [==[--gtest_filter=${filter}]==])\n"
         "set_tests_properties([==[${name}]==] PROPERTIES WORKING_DIRECTORY [==[${WORKING_DIRECTORY}]==] "
         "TIMEOUT ${TIMEOUT} RESOURCE_LOCK cpu ENVIRONMENT [==[${ENVIRONMENT}]==])\n")
  math(EXPR count "${count} + 1")
endmacro()

set(suite "")
foreach(line IN LISTS lines)
  if(line MATCHES "^Running main" OR line STREQUAL "")
    continue()
  endif()
  if(line MATCHES "^([^ ].*)\\.$")  # a suite: "Suite." or "Prefix/Suite."
    set(suite "${CMAKE_MATCH_1}")
    string(REGEX REPLACE ".*/" "" base "${suite}")
    if(base IN_LIST per_test_suites)
      set(per_test TRUE)
    else()
      set(per_test FALSE)
      register("${suite}" "${suite}.*")
    endif()
  elseif(line MATCHES "^  ([^ ]+)" AND per_test)  # a test, possibly followed by "  # GetParam() = ..."
    register("${suite}.${CMAKE_MATCH_1}" "${suite}.${CMAKE_MATCH_1}")
  endif()
endforeach()

if(count EQUAL 0)
  message(FATAL_ERROR "${TEST_BINARY} lists no tests")
endif()
file(WRITE "${OUTPUT}" "${script}")
