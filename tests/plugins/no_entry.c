/* A shared object that is not a pesc plugin: no pesc_plugin_entry. */
int not_a_plugin(void);
int not_a_plugin(void) { return 42; }
