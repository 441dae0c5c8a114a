/* A shared object whose pesc_plugin_entry is a variable, not a function: the loader must
 * refuse it rather than call into its data (it once crashed every command that loaded it). */
int pesc_plugin_entry = 5;
