# Renames the test helpers of before the CitizenSync::* modules (CitizenSyncTest,
# CitizenSyncE2E, CitizenSyncBroker, CitizenSyncShipped) in a TAP test:
#   sed -E -i -f test/perl/old_names.sed test/t/NNN_x.pl
# (for branches that added tests with the old names; delete once they are merged).
# By hand: a multi-line "use CitizenSyncE2E qw(...)" becomes the four
# "use CitizenSync::... qw(:all);" lines below; a test that used no helper
# module and called $node->poll_query_until (now poll_until($node, ...)) gets
# use FindBin; use lib "$FindBin::RealBin/../perl"; use CitizenSync::Check qw(poll_until);
s/CitizenSyncTest::produce\((\$[A-Za-z_0-9]+), */\1->produce(/g
s/\$CitizenSyncTest::(DB|SYNC_ROLE|SERVICE)\b/$CitizenSync::Node::\1/g
s/\$CitizenSyncTest::TOPIC\b/$CitizenSync::Broker::TOPIC/g
s/\b(CitizenSyncTest|CitizenSyncE2E)::(new_node|setup_db|install_extension|new_plain_node|run_sql|consumer_pid|stop_under_fault|start_pipeline|setup_auth_db|source_conninfo)\b/CitizenSync::Node::\2/g
s/\bCitizenSyncTest::(new_model|add_events|feed|snapshot|event_json|suffix_counts)\b/CitizenSync::Events::\1/g
s/\b(CitizenSyncTest|CitizenSyncE2E)::(load_expected|mismatch_sql|wait_converged|consumer_stats|counted_sql|check_counts|check_offsets_at_end|stored_offsets|wait_assigned|poll_until|query_or_undef|drift|pending_count|wait_outbox_drained|source_state|cache_state|wait_caches_converged|wait_cache_equals_source|publisher_stats|check_outbox_complete|check_topic_has_outbox|check_topic_order|check_topic_complete)\b/CitizenSync::Check::\2/g
s/\b(CitizenSyncTest|CitizenSyncE2E)::(start_broker|positions|topic_events)\b/CitizenSync::Broker::\2/g
s/\bCitizenSyncBroker\b/CitizenSync::Broker/g
s/\bCitizenSyncShipped\b/CitizenSync::Shipped/g
s/^use CitizenSyncE2E\b.*;$/use CitizenSync::Broker qw(:all);\nuse CitizenSync::Node qw(:all);\nuse CitizenSync::Events qw(:all);\nuse CitizenSync::Check qw(:all);/
s/^use CitizenSyncTest\b.*;$/use CitizenSync::Broker;\nuse CitizenSync::Node;\nuse CitizenSync::Events;\nuse CitizenSync::Check qw(poll_until);/
s/(\$[A-Za-z_0-9]+)->poll_query_until\(/poll_until(\1, /g
