#   Debian packages with CPack's DEB generator (`cpack -G DEB` in a build
#   folder, or deploy/package.sh for a release build):
#     kim-broker  the broker, its systemd unit, /etc/kim/{kim.cfg,policy.cfg},
#                 the user `kim` and /var/lib/kim (postinst), man pages
#     kim         the command-line tool and its man page
#     kim-dev     headers, the static client and protocol libraries, kim.pc
#     kim-agent   the agent, its unit template kim-agent@.service, the user
#                 `kim-agent` and /var/lib/kim-agent (postinst), the sample
#                 configuration, the guide and the OpenAPI file
#   The unit and the configuration go to absolute paths (/etc/kim and the
#   unit folder under the prefix), as a Debian package wants them: build
#   packages with CMAKE_INSTALL_PREFIX=/usr.

#   /etc/kim/kim.cfg: deploy/kim.cfg with the data folder in /var/lib/kim
#   and the example organisation commented out (its key is libzmq's
#   documentation example, known to everyone).
file(READ ${PROJECT_SOURCE_DIR}/deploy/kim.cfg kim_cfg)
string(REPLACE "    data = ./kim-data\n" "    data = /var/lib/kim\n" kim_cfg "${kim_cfg}")
string(FIND "${kim_cfg}" "\norgs\n" kim_orgs_at)
if(kim_orgs_at LESS 0)
    message(FATAL_ERROR "deploy/kim.cfg has no orgs section to comment out")
endif()
math(EXPR kim_orgs_from "${kim_orgs_at} + 6")
string(SUBSTRING "${kim_cfg}" 0 ${kim_orgs_from} kim_cfg_head)
string(SUBSTRING "${kim_cfg}" ${kim_orgs_from} -1 kim_cfg_orgs)
string(REPLACE "\n    " "\n    #" kim_cfg_orgs "\n${kim_cfg_orgs}")
string(SUBSTRING "${kim_cfg_orgs}" 1 -1 kim_cfg_orgs)
file(WRITE ${PROJECT_BINARY_DIR}/etc/kim.cfg
     "${kim_cfg_head}    #   Register each organisation here (see the example below and\n"
     "    #   kim.cfg(5)), then `systemctl reload kim-broker`.\n${kim_cfg_orgs}")

install(FILES ${PROJECT_BINARY_DIR}/etc/kim.cfg ${PROJECT_SOURCE_DIR}/deploy/policy.cfg
        DESTINATION /etc/kim PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ COMPONENT broker)
install(FILES ${PROJECT_SOURCE_DIR}/deploy/systemd/kim-broker.service
        ${PROJECT_SOURCE_DIR}/deploy/systemd/kim-backup.service
        ${PROJECT_SOURCE_DIR}/deploy/systemd/kim-backup.timer
        DESTINATION lib/systemd/system COMPONENT broker)
install(FILES ${PROJECT_SOURCE_DIR}/docs/operations.md
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/kim-broker COMPONENT broker)
install(FILES ${PROJECT_SOURCE_DIR}/deploy/systemd/kim-agent@.service
        DESTINATION lib/systemd/system COMPONENT agent)
install(FILES ${PROJECT_SOURCE_DIR}/deploy/agent.cfg ${PROJECT_SOURCE_DIR}/docs/agent.md
        ${PROJECT_SOURCE_DIR}/agents/agent/openapi.json
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/kim-agent COMPONENT agent)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/deploy/monitoring/
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/kim-broker/monitoring COMPONENT broker
        OPTIONAL)

#   Man pages from docs/man/*.scd with scdoc (Debian: scdoc); without it
#   the build goes on and the packages carry no man pages.
find_program(KIM_SCDOC scdoc)
set(KIM_MAN_PAGES kim-broker.8 kim.cfg.5 kim-policy.5 kim.1 kim-agent.8)
if(KIM_SCDOC)
    set(kim_man_outputs)
    foreach(page ${KIM_MAN_PAGES})
        add_custom_command(OUTPUT ${PROJECT_BINARY_DIR}/man/${page}
            COMMAND ${CMAKE_COMMAND} -E make_directory ${PROJECT_BINARY_DIR}/man
            COMMAND ${KIM_SCDOC} < ${PROJECT_SOURCE_DIR}/docs/man/${page}.scd
                    > ${PROJECT_BINARY_DIR}/man/${page}
            DEPENDS ${PROJECT_SOURCE_DIR}/docs/man/${page}.scd VERBATIM)
        list(APPEND kim_man_outputs ${PROJECT_BINARY_DIR}/man/${page})
        string(REGEX REPLACE ".*\\.([0-9])$" "\\1" section ${page})
        set(component broker)
        if(page STREQUAL "kim.1")
            set(component tools)
        elseif(page STREQUAL "kim-agent.8")
            set(component agent)
        endif()
        install(FILES ${PROJECT_BINARY_DIR}/man/${page}
                DESTINATION ${CMAKE_INSTALL_MANDIR}/man${section} COMPONENT ${component})
    endforeach()
    add_custom_target(man ALL DEPENDS ${kim_man_outputs})
else()
    message(STATUS "scdoc not found: no man pages")
endif()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME kim)
set(CPACK_PACKAGE_VENDOR "kim")
set(CPACK_PACKAGE_CONTACT "kim maintainers <kim@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "message broker for inter-agency referrals (KIM NRW)")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL broker tools dev agent)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)

set(CPACK_DEBIAN_BROKER_PACKAGE_NAME kim-broker)
set(CPACK_DEBIAN_BROKER_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_BROKER_PACKAGE_RECOMMENDS "kim")
set(CPACK_COMPONENT_BROKER_DESCRIPTION
    "kim broker: routes referrals and case handovers between agencies\n"
    "Routes MessagePack referral messages over CurveZMQ, checks each transfer\n"
    "against a readable policy, receipts only what is synced to its LMDB log,\n"
    "and keeps a hash-chained audit log. Runs as the systemd unit kim-broker.")
set(CPACK_DEBIAN_BROKER_PACKAGE_CONTROL_EXTRA
    ${PROJECT_SOURCE_DIR}/deploy/debian/postinst
    ${PROJECT_SOURCE_DIR}/deploy/debian/prerm
    ${PROJECT_SOURCE_DIR}/deploy/debian/postrm
    ${PROJECT_SOURCE_DIR}/deploy/debian/conffiles)
set(CPACK_DEBIAN_BROKER_PACKAGE_CONTROL_STRICT_PERMISSION ON)

set(CPACK_DEBIAN_TOOLS_PACKAGE_NAME kim)
set(CPACK_COMPONENT_TOOLS_DESCRIPTION
    "kim command-line tool: send, inbox, audit, policy, keys\n"
    "Sends and receives referral messages, verifies and replays the broker's\n"
    "audit log, checks policies and makes key pairs.")

set(CPACK_DEBIAN_DEV_PACKAGE_NAME kim-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS
    "libczmq-dev, libzmq3-dev, libmsgpack-dev, libsodium-dev, libjansson-dev, liblmdb-dev")
set(CPACK_COMPONENT_DEV_DESCRIPTION
    "kim client library and protocol codec: headers, static libraries, kim.pc\n"
    "For agency systems that talk to a kim broker from C.")

set(CPACK_DEBIAN_AGENT_PACKAGE_NAME kim-agent)
set(CPACK_DEBIAN_AGENT_PACKAGE_DEPENDS "adduser")
set(CPACK_COMPONENT_AGENT_DESCRIPTION
    "kim agent: connects an office's own systems to a kim broker\n"
    "Keeps the office's key, a durable outbox and inbox and views of its\n"
    "referrals and cases, and serves them over a local HTTP/JSON API, webhooks\n"
    "and a folder bridge. One instance per office: kim-agent@ORG.service.")
set(CPACK_DEBIAN_AGENT_PACKAGE_CONTROL_EXTRA ${PROJECT_SOURCE_DIR}/deploy/debian/agent/postinst)
set(CPACK_DEBIAN_AGENT_PACKAGE_CONTROL_STRICT_PERMISSION ON)

include(CPack)
