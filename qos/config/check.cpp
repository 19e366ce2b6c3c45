// qos-check's command line: argument parsing, the load, and what is printed where.
#include "qos/config/check.hpp"

#include <exception>
#include <stdexcept>

#include "qos/config/effective.hpp"
#include "qos/version.hpp"

namespace qos::config {

namespace {

void usage(std::ostream& err, std::string_view program) {
  err << "usage: " << program
      << " FILE [--strict] [--print-effective] [--service-time GROUP=DURATION]...\n"
         "       "
      << program
      << " --version\n"
         "Loads FILE as the server would and prints the effective configuration.\n"
         "  --print-effective  print it as YAML the server reads back (defaults filled in)\n"
         "  --strict           exit 1 when there are warnings\n"
         "  --service-time     a group's measured service time (e.g. from /qos/status), to\n"
         "                     check route max_wait against it\n"
         "exit status: 0 valid, 1 warnings with --strict, 2 invalid, unreadable or misused\n";
}

struct check_args {
  std::string file;
  bool strict = false;
  bool print_effective = false;
  check_facts facts;
};

}  // namespace

int check_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err,
                  std::string_view program, const std::function<void(const app_config&)>& extra) {
  check_args a;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--version") {
      out << program << " (qos) " << qos::version() << "\n";
      return check_ok;
    }
    if (arg == "--help" || arg == "-h") {
      usage(out, program);
      return check_ok;
    }
    if (arg == "--strict") {
      a.strict = true;
    } else if (arg == "--print-effective") {
      a.print_effective = true;
    } else if (arg == "--service-time") {
      const auto eq = i + 1 < args.size() ? args[i + 1].find('=') : std::string::npos;
      if (eq == std::string::npos || eq == 0) {
        err << program << ": --service-time needs GROUP=DURATION (e.g. db=40ms)\n";
        usage(err, program);
        return check_invalid;
      }
      const std::string& spec = args[++i];
      try {
        a.facts.service_time[spec.substr(0, eq)] = parse_duration(spec.substr(eq + 1));
      } catch (const std::invalid_argument& e) {
        err << program << ": --service-time " << spec << ": " << e.what() << "\n";
        return check_invalid;
      }
    } else if (arg.size() > 1 && arg.front() == '-') {
      err << program << ": unknown option " << arg << "\n";
      usage(err, program);
      return check_invalid;
    } else if (a.file.empty()) {
      a.file = arg;
    } else {
      err << program << ": one FILE only (got " << a.file << " and " << arg << ")\n";
      usage(err, program);
      return check_invalid;
    }
  }
  if (a.file.empty()) {
    err << program << ": no FILE given\n";
    usage(err, program);
    return check_invalid;
  }

  app_config cfg;
  try {
    cfg = load_config(a.file);
    if (extra) extra(cfg);
  } catch (const config_error& e) {
    err << e.what() << "\n";
    return check_invalid;
  }
  for (const auto& [group, unused] : a.facts.service_time) {
    if (cfg.find_group(group) == nullptr) {
      err << program << ": --service-time: " << a.file << " has no group '" << group << "'\n";
      return check_invalid;
    }
  }

  const std::string hash = config_hash(cfg);
  if (a.print_effective) {
    out << "# effective configuration of " << a.file << " (qos " << qos::version()
        << "), config hash " << hash << "\n"
        << effective_yaml(cfg);
  } else {
    out << a.file << ": OK (qos " << qos::version() << "), config hash " << hash << "\n"
        << summary(cfg);
  }
  const auto found = warnings(cfg, a.facts);
  for (const auto& w : found) err << format_warning(cfg, w) << "\n";
  if (!found.empty()) {
    err << found.size() << (found.size() == 1 ? " warning" : " warnings") << "\n";
  }
  return a.strict && !found.empty() ? check_warned : check_ok;
}

}  // namespace qos::config
