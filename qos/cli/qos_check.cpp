// qos-check FILE: validates a qos config without starting a server, as `nginx -t` does.
// Everything but main lives in the config layer (qos/config/check.hpp), shared with the
// example's --check.
#include <exception>
#include <iostream>
#include <new>
#include <string>
#include <vector>

#include "qos/config/check.hpp"

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> args(argv + 1, argv + argc);
    return qos::config::check_command(args, std::cout, std::cerr);
  } catch (const std::bad_alloc&) {
    std::cerr << "qos-check: out of memory\n";
  } catch (const std::exception& e) {
    std::cerr << "qos-check: " << e.what() << "\n";
  }
  return qos::config::check_invalid;
}
