#include <gtest/gtest.h>

#include "test_util.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  mmkit::test::print_environment();
  return RUN_ALL_TESTS();
}
