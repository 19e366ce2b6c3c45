# What ships to adopters: install() rules, the CMake package (find_package(qos)), qos.pc, the
# Debian package (cpack -G DEB) and the Doxygen API reference (the `docs` target). Included at
# the end of the top-level CMakeLists.txt, once every library target exists.
#
# Installed layout (under the prefix):
#   include/qos/...                      the headers of every layer and the generated version.hpp
#   <libdir>/libqos{,_config,_admission,_fiber,_core,_jobs}.a (and libqos_jobs_pg.a with libpq)
#   <libdir>/cmake/qos/                  qosConfig.cmake, qosConfigVersion.cmake, qosTargets*.cmake
#   <libdir>/pkgconfig/qos.pc
#   share/doc/qos/                       LICENSE, CHANGELOG.md, README.md
#   bin/qos-check                        the config checker (with QOS_BUILD_TOOLS)

include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# A parent project that adds qos with add_subdirectory or FetchContent decides whether qos is
# installed with it; qos built for itself always is.
option(QOS_INSTALL "Generate the install rules, the CMake package and qos.pc"
       ${PROJECT_IS_TOP_LEVEL})

set(qos_libraries qos_core qos_fiber qos_admission qos_config qos qos_jobs)
# The PostgreSQL job store only when libpq was found: the package says whether it has it.
set(QOS_WITH_POSTGRES OFF)
set(qos_pc_pg_libs "")
set(qos_pc_pg_requires "")
if(TARGET qos_jobs_pg)
  list(APPEND qos_libraries qos_jobs_pg)
  set(QOS_WITH_POSTGRES ON)
  set(qos_pc_pg_libs " -lqos_jobs_pg")
  set(qos_pc_pg_requires " libpq")
endif()

if(QOS_INSTALL)
  set(qos_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/qos)

  # The headers go through each target's FILE_SET, so every layer installs exactly the headers it
  # publishes (version.hpp included, from the build tree), and the exported targets point at
  # <prefix>/include.
  install(TARGETS ${qos_libraries} EXPORT qos_targets
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
          FILE_SET HEADERS DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  install(EXPORT qos_targets NAMESPACE qos:: FILE qosTargets.cmake DESTINATION ${qos_cmake_dir})

  configure_package_config_file(cmake/qosConfig.cmake.in ${PROJECT_BINARY_DIR}/qosConfig.cmake
                                INSTALL_DESTINATION ${qos_cmake_dir})
  # 0.x: a minor release may change the API (semantic versioning, item 4), so find_package(qos
  # 0.1) accepts 0.1.z only; once qos is 1.0 this becomes SameMajorVersion.
  write_basic_package_version_file(${PROJECT_BINARY_DIR}/qosConfigVersion.cmake
                                   COMPATIBILITY SameMinorVersion)
  install(FILES ${PROJECT_BINARY_DIR}/qosConfig.cmake ${PROJECT_BINARY_DIR}/qosConfigVersion.cmake
          DESTINATION ${qos_cmake_dir})

  # qos.pc finds its prefix from its own place (${pcfiledir}), so it stays right whatever prefix
  # `cmake --install --prefix`, CPack or dpkg -x put it under.
  file(RELATIVE_PATH qos_pc_to_prefix /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
  string(REGEX REPLACE "/$" "" qos_pc_to_prefix "${qos_pc_to_prefix}")
  configure_file(cmake/qos.pc.in ${PROJECT_BINARY_DIR}/qos.pc @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/qos.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

  install(FILES LICENSE CHANGELOG.md README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
  if(TARGET qos-check)
    install(TARGETS qos-check RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  endif()
endif()

# The Debian package: `cpack -G DEB` in the build directory writes libqos-dev_<version>_amd64.deb,
# the static libraries and headers under /usr. Only for qos built for itself: CPack settings are
# global to a build, and a parent project packages its own way.
if(QOS_INSTALL AND PROJECT_IS_TOP_LEVEL)
  set(CPACK_PACKAGE_NAME libqos-dev)
  set(CPACK_PACKAGE_VENDOR "qos maintainers")
  set(CPACK_PACKAGE_CONTACT "qos maintainers <maintainers@users.noreply.h-seed-8524bb06.example>")
  set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
      "admission control (concurrency limits, priority queues, fallbacks) for Pistache servers")
  set(CPACK_PACKAGE_DESCRIPTION
      "qos guards the routes of a Pistache HTTP server that use a scarce resource: a limit group\n\
caps the handlers running at once, waiting requests park as Boost fibers and resume by priority,\n\
and a request that waits too long gets the route's fallback. Configured in YAML.\n\
This package holds the static libraries, the headers, the CMake package (find_package(qos)),\n\
qos.pc and qos-check, the config checker.")
  set(CPACK_RESOURCE_FILE_LICENSE ${PROJECT_SOURCE_DIR}/LICENSE)
  set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
  set(CPACK_GENERATOR DEB)
  set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
  set(CPACK_DEBIAN_PACKAGE_SECTION libdevel)
  # What a consumer's build needs: the headers qos's headers include, the libraries its static
  # libraries link (yaml-cpp too: qos_config links it privately, but statically), and pkg-config,
  # with which qosConfig.cmake finds Pistache.
  set(CPACK_DEBIAN_PACKAGE_DEPENDS
      "libpistache-dev, libboost-fiber-dev (>= 1.74), libboost-context-dev (>= 1.74), \
libyaml-cpp-dev, libspdlog-dev, libfmt-dev, prometheus-cpp-dev, libsqlite3-dev, libpq-dev, \
pkg-config")
  include(CPack)
endif()

# The API reference: `cmake --build build --target docs` writes build/docs/html/index.html from
# the public headers. Not part of `all`, and absent without doxygen (QOS_DOCS_DEPS=1 bash
# scripts/install-deps.sh installs it).
find_package(Doxygen QUIET)
if(DOXYGEN_FOUND AND PROJECT_IS_TOP_LEVEL)
  configure_file(cmake/Doxyfile.in ${PROJECT_BINARY_DIR}/Doxyfile @ONLY)
  add_custom_target(docs
    COMMAND Doxygen::doxygen ${PROJECT_BINARY_DIR}/Doxyfile
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    COMMENT "Generating the API reference in ${PROJECT_BINARY_DIR}/docs/html"
    VERBATIM)
endif()
